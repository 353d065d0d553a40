"""A run's data: its sources and held-out sets, checked before anything is created, then
split, packed and described (the data report).

Each source is packed shard by shard: a shard's training documents (each followed by EOS)
form one stream cut into fixed-length sequences (packing.py), so a shard can be trained
as soon as it is tokenized. The validation of the first source is `val`, each other
source NAME's is `NAME`: its own held-out documents (or valid files), whose first
`val_batches` batches are fixed before step 0; `eval_sets` are evaluated alongside. The
training order (mixture.py) depends only on (seed, epoch) and the shards' contents.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from training.contract.config import RunConfig, resolve_path
from training.contract.corpus import CorpusError, CorpusFiles, find_corpus, split_documents
from training.contract.errors import InputError
from training.contract.layout import Workspace
from training.contract.sources import Source, source_eval_key
from training.trainer.corpus_scan import SHARD_CHARS, CorpusScan, scan_corpus
from training.trainer.mixture import (
    GROUP,
    Feed,
    MixState,
    SourceOrder,
    integer_weights,
    mixed_batches,
)
from training.trainer.packing import (
    Batch,
    PackedSequences,
    TokenStream,
    fixed_batches,
    n_batches,
)
from training.trainer.token_cache import TokenizedCorpus
from training.trainer.tokenization import Tokenization

__all__ = [
    "Batch",
    "DataError",
    "EpochOrder",
    "PackedSequences",
    "TokenStream",
    "fixed_batches",
]

# What a data order is: resumed runs check that their checkpoint's is this one.
LAYOUT = {"shard_chars": SHARD_CHARS, "group": GROUP}
EvalBatches = list[tuple[np.ndarray, np.ndarray]]


class EpochOrder:
    """Sequence index at a global cursor: epoch e is a permutation drawn from (seed, e) (the
    order of a one-shard source, mixture.SourceOrder)."""

    def __init__(self, n: int, seed: int) -> None:
        if n <= 0:
            raise ValueError("no sequences to order")
        self.n, self.seed = n, seed
        self._epoch = -1
        self._perm = np.arange(0)

    def permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.n)
            self._epoch = epoch
        return self._perm

    def __getitem__(self, cursor: int) -> int:
        return int(self.permutation(cursor // self.n)[cursor % self.n])


# -- inputs: which files, checked before anything is created ------------------------------------


@dataclass(frozen=True)
class SourceInput:
    """One source's files, read once and fingerprinted, and its validation."""

    source: Source
    scan: CorpusScan
    valid: CorpusScan | None  # its own validation files (valid_data for the first source)
    valid_source: str  # what the validation is, in words


@dataclass(frozen=True)
class DataInputs:
    """The corpus files of a run, each read once and fingerprinted (see scan_inputs)."""

    sources: list[SourceInput]
    eval_sets: dict[str, CorpusScan] = field(default_factory=dict)

    @property
    def train(self) -> CorpusScan:
        return self.sources[0].scan

    @property
    def valid(self) -> CorpusScan | None:
        return self.sources[0].valid

    @property
    def valid_source(self) -> str:
        return self.sources[0].valid_source

    def scans(self) -> list[CorpusScan]:
        out = [s.scan for s in self.sources]
        out += [s.valid for s in self.sources if s.valid is not None]
        return out + list(self.eval_sets.values())


class DataError(InputError):
    """Bad data input, naming the config field it came from."""


def _find(value: str, base_dir: Path, field_name: str, label: str = "") -> CorpusFiles:
    try:
        return find_corpus(resolve_path(value, base_dir))
    except CorpusError as exc:
        raise DataError(label + str(exc), field_name) from None


def _scan(
    files: tuple[Path, ...], field_name: str, label: str, memo_dir: Path | None, text_field: str
) -> CorpusScan:
    try:
        return scan_corpus(files, label, memo_dir, text_field)
    except CorpusError as exc:
        raise DataError(str(exc), field_name) from None


def scan_memo_dir(workspace: Workspace) -> Path:
    """Where corpus_scan.remember_scan records scanned corpora: beside the token cache, not
    in it (the console lists and deletes the cache's entries)."""
    return workspace.cache_dir / "scans"


def scan_inputs(config: RunConfig, base_dir: Path, memo_dir: Path | None = None) -> DataInputs:
    """Find and read every corpus the run uses; DataError names the field at fault.
    `memo_dir`: corpus_scan.remember_scan's records (files scanned before, unchanged)."""
    sources = config.sources()
    many = len(sources) > 1
    inputs = []
    for i, source in enumerate(sources):
        field_ = source.text_field or config.text_field
        where = f"source '{source.name}': " if many else ""
        label = f"source '{source.name}'" if many else "training corpus"
        corpus = _find(source.path, base_dir, "data", where)
        scan = _scan(corpus.train, "data", label, memo_dir, field_)
        valid: CorpusScan | None = None
        if i == 0 and config.valid_data:
            vfiles = _find(config.valid_data, base_dir, "valid_data")
            files = vfiles.valid or vfiles.train
            valid = _scan(files, "valid_data", "validation data", memo_dir, field_)
            described = str(config.valid_data)
        elif corpus.valid:
            valid = _scan(corpus.valid, "data", f"{label} validation", memo_dir, field_)
            described = str(corpus.valid[0].name)
        elif config.val_fraction > 0:
            described = f"{config.val_fraction:g} of the documents held out"
        else:
            described = "none"
        inputs.append(SourceInput(source, scan, valid, described))
    sets = {}
    for name, path in (config.eval_sets or {}).items():
        found = _find(path, base_dir, "eval_sets")
        sets[name] = _scan(
            found.valid or found.train, "eval_sets", f"eval set '{name}'", memo_dir,
            config.text_field,
        )  # fmt: skip
    return DataInputs(inputs, sets)


# -- the run's data ---------------------------------------------------------------------------


class Waiter:
    """How data waits for tokenization: before training a stop request ends the wait (and
    the trainer, nothing created); once training, it waits on, reporting progress. Without
    a tokenization every corpus must be complete."""

    def __init__(self, tokenization: Tokenization | None = None) -> None:
        self.tokenization = tokenization
        self.should_stop: Callable[[], bool] | None = None
        self.on_wait: Callable[[], None] | None = None

    def __call__(self, corpus: TokenizedCorpus, first_doc: int, end_doc: int) -> None:
        if self.tokenization is None:
            if not corpus.ready(first_doc, end_doc):
                raise RuntimeError(f"{corpus.key} is not tokenized")
            return
        self.tokenization.wait(
            corpus, first_doc, end_doc, should_stop=self.should_stop, on_wait=self.on_wait
        )


class SourceData:
    """One source: its corpus split into training documents per shard and held-out ones."""

    def __init__(
        self,
        index: int,
        inputs: SourceInput,
        corpus: TokenizedCorpus,
        config: RunConfig,
        wait: Waiter,
        *,
        one_shard: bool = False,
    ) -> None:
        self.index, self.source, self.scan, self.corpus = index, inputs.source, inputs.scan, corpus
        self.wait = wait
        self.seq_len = config.max_seq_length
        n = inputs.scan.documents
        self.held_out = np.zeros(0, dtype=np.int64)
        self.tail_split = False
        if inputs.valid is None and config.val_fraction > 0:
            if n >= 2:
                self.held_out = split_documents(n, config.val_fraction)
            else:
                self.tail_split = True  # one document: its tail is held out
        self.val_fraction = config.val_fraction
        # The shards the order shuffles: the scan's, or one for a resumed run whose
        # checkpoint predates shards (its order treated the corpus as one).
        scan_shards = [(s.first_doc, s.documents) for s in inputs.scan.shards]
        self.shards = [(0, n)] if one_shard else scan_shards
        self._packed: dict[int, PackedSequences] = {}
        self.order = SourceOrder(self.size, len(self.shards), config.seed, index)

    @property
    def name(self) -> str:
        return self.source.name

    def ready(self, shard: int) -> bool:
        first, n = self.shards[shard]
        return self.corpus.ready(first, first + n)

    def packed(self, shard: int) -> PackedSequences:
        """Shard's training sequences (waits for it to be tokenized)."""
        packed = self._packed.get(shard)
        if packed is None:
            first, n = self.shards[shard]
            self.wait(self.corpus, first, first + n)
            if self.tail_split:
                tokens = self.corpus.n_tokens
                cut = max(2, int(tokens * (1 - self.val_fraction)))
                arrays, _, bounds = self.corpus.segments(np.zeros(1, dtype=np.int64))
                stream = TokenStream.from_ranges(arrays[0], [(int(bounds[0, 0]), cut)])
            else:
                ids = np.arange(first, first + n, dtype=np.int64)
                if len(self.held_out):
                    ids = np.setdiff1d(ids, self.held_out, assume_unique=True)
                stream = TokenStream.from_documents(self.corpus, ids)
            packed = self._packed[shard] = PackedSequences(stream, self.seq_len)
        return packed

    def size(self, shard: int) -> int:
        return len(self.packed(shard))

    @property
    def complete(self) -> bool:
        return self.corpus.complete

    def totals(self) -> dict[str, int] | None:
        """Tokens, sequences and targets per epoch, once every shard is tokenized."""
        if not self.complete:
            return None
        packs = [self.packed(k) for k in range(len(self.shards))]
        return {
            "tokens": sum(len(p.stream) for p in packs),
            "sequences": sum(len(p) for p in packs),
            "target_tokens": sum(p.target_tokens for p in packs),
        }

    def feed(self) -> Feed:
        return Feed(self.name, self.source.weight, self.order, self.packed)

    def tokenize_plan(self) -> list[int]:
        """Shards in the order the first epoch trains them."""
        return [int(k) for group in self.order.groups(0) for k in group]


@dataclass
class HeldOut:
    """A held-out set's fixed batches and what they are."""

    batches: EvalBatches
    report: dict[str, Any]
    corpus: TokenizedCorpus | None = None  # with `ids`: the whole set, for its figures
    ids: np.ndarray | None = None

    def figures(self, seq_len: int) -> dict[str, Any]:
        """The report, with the whole set's tokens and sequences once it is tokenized."""
        if self.report["tokens"] is not None or self.corpus is None or self.ids is None:
            return self.report
        if not self.corpus.complete:
            return self.report
        _, _, bounds = self.corpus.segments(self.ids)
        tokens = int((bounds[:, 1] - bounds[:, 0]).sum())
        sequences = 0 if tokens < 2 else math.ceil((tokens - 1) / seq_len)
        return {**self.report, "tokens": tokens, "sequences": sequences}


def held_out_set(
    corpus: TokenizedCorpus,
    doc_ids: np.ndarray,
    config: RunConfig,
    wait: Waiter,
    rank: int,
    world: int,
    *,
    tail_of: int | None = None,
) -> HeldOut | None:
    """The first `val_batches` batches of the documents' stream (in their order): only
    the shards they need are waited for."""
    seq_len, batch = config.max_seq_length, config.batch_size
    limit = config.val_batches
    needed = math.inf if limit == -1 else limit * batch * seq_len + 1
    if tail_of is not None:  # one document's tail
        wait(corpus, 0, 1)
        arrays, _, bounds = corpus.segments(np.zeros(1, dtype=np.int64))
        stream = TokenStream.from_ranges(arrays[0], [(tail_of, int(bounds[0, 1]))])
        complete = True
    else:
        chosen: list[np.ndarray] = []
        have = 0
        complete = True
        for first, n in corpus.layout:
            ids = doc_ids[(doc_ids >= first) & (doc_ids < first + n)]
            if not len(ids):
                continue
            if have >= needed:
                complete = False
                break
            wait(corpus, first, first + n)
            _, _, bounds = corpus.segments(ids)
            have += int((bounds[:, 1] - bounds[:, 0]).sum())
            chosen.append(ids)
        stream = TokenStream.from_documents(
            corpus, np.concatenate(chosen) if chosen else np.zeros(0, dtype=np.int64)
        )
    packed = PackedSequences(stream, seq_len)
    if len(packed) == 0:
        return None
    batches = fixed_batches(packed, batch, limit, rank, world)
    report = {
        "documents": 1 if tail_of is not None else len(doc_ids),
        "tokens": len(stream) if complete else None,
        "sequences": len(packed) if complete else None,
        "batches": len(batches) if complete else n_batches(packed, batch, limit),
    }
    return HeldOut(batches, report, corpus, doc_ids if tail_of is None else None)


@dataclass
class RunData:
    sources: list[SourceData]
    held_out: dict[str, HeldOut]  # "val", each other source's name, each eval set
    report: dict[str, Any]
    eval_set_names: list[str]  # the extra held-out sets: sources after the first, eval_sets

    @property
    def train(self) -> SourceData:
        return self.sources[0]

    def batches(
        self, config: RunConfig, state: MixState, rank: int = 0, world: int = 1
    ) -> Iterator[Batch]:
        feeds = [s.feed() for s in self.sources]
        return mixed_batches(
            feeds, config.batch_size, config.max_seq_length, start=state, rank=rank, world=world
        )


def make_sources(
    config: RunConfig,
    inputs: DataInputs,
    corpora: dict[str, TokenizedCorpus],
    wait: Waiter,
    one_shard: bool = False,
) -> list[SourceData]:
    """Every source, split (nothing waited for yet); `corpora` maps each scan's content
    hash to its (arriving) tokens."""
    return [
        SourceData(i, s, corpora[s.scan.content_hash], config, wait, one_shard=one_shard)
        for i, s in enumerate(inputs.sources)
    ]


def tokenize_plan(sources: list[SourceData]) -> list[tuple[TokenizedCorpus, int]]:
    """The parts to tokenize first: those the trained sources reach first in their first
    epoch's order, a source's share of the steps deciding how soon it reaches them."""
    weights = integer_weights([s.source.weight for s in sources])
    items: list[tuple[float, int, TokenizedCorpus, int]] = []
    for s, weight in zip(sources, weights, strict=True):
        if weight <= 0 or s.corpus.complete:
            continue
        before = 0
        for group in s.order.groups(0):
            need = before / weight
            for k in group.tolist():
                first, n = s.shards[k]
                items += [(need, s.index, s.corpus, p) for p in s.corpus.parts_of(first, first + n)]
                before += s.scan.chars if len(s.shards) == 1 else s.scan.shards[k].chars
    items.sort(key=lambda item: (item[0], item[1]))
    return [(corpus, part) for _, _, corpus, part in items]


def build_run_data(
    config: RunConfig,
    inputs: DataInputs,
    corpora: dict[str, TokenizedCorpus],
    wait: Waiter,
    *,
    rank: int = 0,
    world: int = 1,
    sources: list[SourceData] | None = None,
) -> RunData:
    """Split and pack every source and build the held-out sets (waiting for the shards
    they need)."""
    if sources is None:
        sources = make_sources(config, inputs, corpora, wait)
    held: dict[str, HeldOut] = {}
    for i, (data, given) in enumerate(zip(sources, inputs.sources, strict=True)):
        key = source_eval_key(i, data.source)
        if given.valid is not None:
            valid = corpora[given.valid.content_hash]
            ids = np.arange(given.valid.documents, dtype=np.int64)
            found = held_out_set(valid, ids, config, wait, rank, world)
        elif data.tail_split:
            cut_at = None
            wait(data.corpus, 0, 1)
            tokens = data.corpus.n_tokens
            cut_at = max(2, int(tokens * (1 - config.val_fraction)))
            found = held_out_set(data.corpus, np.zeros(1, np.int64), config, wait, rank, world,
                                 tail_of=cut_at)  # fmt: skip
        elif len(data.held_out):
            found = held_out_set(data.corpus, data.held_out, config, wait, rank, world)
        else:
            found = None
        if found is not None:
            held[key] = found
    for name, scan in inputs.eval_sets.items():
        ids = np.arange(scan.documents, dtype=np.int64)
        found = held_out_set(corpora[scan.content_hash], ids, config, wait, rank, world)
        if found is not None:
            held[name] = found
    names = [s.name for s in sources[1:] if s.name in held] + list(inputs.eval_sets)
    report = data_report(config, inputs, sources, held, corpora, world)
    return RunData(sources, held, report, names)


def corpus_run_data(
    config: RunConfig,
    scan: CorpusScan,
    corpus: TokenizedCorpus,
    valid: tuple[CorpusScan, TokenizedCorpus] | None = None,
) -> RunData:
    """The data of a one-source run on a tokenized corpus (tests, benchmarks)."""
    source = config.sources()[0] if config.data else Source("data", "", 1.0)
    described = "valid" if valid else f"{config.val_fraction:g} of the documents held out"
    inputs = DataInputs([SourceInput(source, scan, valid[0] if valid else None, described)])
    corpora = {scan.content_hash: corpus}
    if valid is not None:
        corpora[valid[0].content_hash] = valid[1]
    return build_run_data(config, inputs, corpora, Waiter())


def data_report(
    config: RunConfig,
    inputs: DataInputs,
    sources: list[SourceData],
    held: dict[str, HeldOut],
    corpora: dict[str, TokenizedCorpus],
    world: int,
) -> dict[str, Any]:
    """What the run trains on, for data_report.json and run_start: figures that need the
    whole corpus tokenized are null until it is (a final `tokenization` event has them)."""
    seq_len = config.max_seq_length
    seqs_per_step = config.batch_size * config.grad_accumulation_steps
    total_weight = sum(s.source.weight for s in sources)
    shares = [s.source.weight / total_weight for s in sources]
    main = sources[0]
    totals = main.totals()
    val = held.get("val")
    per_source = []
    for i, (data, given) in enumerate(zip(sources, inputs.sources, strict=True)):
        key = source_eval_key(i, data.source)
        t = data.totals()
        per_source.append(
            {
                "name": data.name,
                "path": data.source.path,
                "weight": shares[i],
                "documents": data.scan.documents - len(data.held_out),
                "tokens": t["tokens"] if t else None,
                "sequences": t["sequences"] if t else None,
                "shards": len(data.scan.shards),
                "epochs_planned": None,
                "eval_key": key if key in held else None,
                "validation": {
                    "source": given.valid_source if key in held else "none",
                    **(held[key].figures(seq_len) if key in held else {}),
                },
                "cache": {"key": data.corpus.key, "hit": data.corpus.hit},
            }
        )
    steps_per_epoch = None
    if totals is not None:
        steps_per_epoch = math.ceil(totals["sequences"] / (shares[0] * seqs_per_step))
    cache = {
        ("train" if i == 0 else f"source {s.name}"): s.corpus
        for i, s in enumerate(sources)  # fmt: skip
    }
    if inputs.valid is not None:
        cache["valid"] = corpora[inputs.valid.content_hash]
    for name, scan in inputs.eval_sets.items():
        cache[name] = corpora[scan.content_hash]
    return {
        "documents": main.scan.documents - len(main.held_out),
        "tokens": totals["tokens"] if totals else None,
        "sequences": totals["sequences"] if totals else None,
        "tokens_per_step": seqs_per_step * seq_len,
        "steps_per_epoch": steps_per_epoch,
        "max_seq_length": seq_len,
        "packing": "documents joined with EOS, cut into fixed-length sequences (no truncation)",
        "target_tokens_per_epoch": totals["target_tokens"] if totals else None,
        "trained_share": (totals["target_tokens"] / max(1, totals["tokens"])) if totals else None,
        "world_size": world,
        "validation": {
            "source": inputs.valid_source if val is not None else "none",
            **(
                val.figures(seq_len)
                if val is not None
                else {"documents": 0, "tokens": 0, "sequences": 0, "batches": 0}
            ),
        },
        "eval_sets": {
            name: held[name].figures(seq_len) | {"documents": inputs.eval_sets[name].documents}
            for name in inputs.eval_sets
            if name in held
        },
        "sources": per_source,
        "cache": {
            name: {"key": c.key, "hit": c.hit, "seconds": round(c.seconds, 3)}
            for name, c in cache.items()
        },
        "layout": LAYOUT,
    }


def plan_epochs(report: dict[str, Any], total_steps: int, seqs_per_step: int) -> None:
    """Each source's planned passes (a source that runs out is repeated): its share of the
    run's sequences over its sequences per epoch (null until it is tokenized)."""
    planned = total_steps * seqs_per_step
    for source in report["sources"]:
        n = source.get("sequences")
        source["epochs_planned"] = round(source["weight"] * planned / n, 3) if n else None


def plan_total_steps(config: RunConfig, report: dict[str, Any]) -> int:
    """Optimizer steps for the run's budget (iters, epochs or train_tokens). An `epochs`
    budget counts passes over the first source (the main corpus)."""
    iters = config.effective_iters
    if iters is not None:
        return int(iters)
    seqs_per_step = config.batch_size * config.grad_accumulation_steps
    if config.epochs is not None:
        share = report["sources"][0]["weight"] if report.get("sources") else 1.0
        return max(1, math.ceil(config.epochs * report["sequences"] / (share * seqs_per_step)))
    return max(1, math.ceil(config.train_tokens / report["tokens_per_step"]))


def _figure(value: Any, spec: str = ",") -> str:
    return "?" if value is None else format(value, spec)


def format_report(report: dict[str, Any]) -> str:
    """The data report for a person: a few aligned lines."""
    val = report["validation"]
    share = report["trained_share"]
    lines = [
        "data:",
        f"  training   {report['documents']:,} documents, {_figure(report['tokens'])} tokens "
        f"-> {_figure(report['sequences'])} sequences of {report['max_seq_length']}"
        + (f" ({share:.2%} of tokens trained per epoch)" if share is not None else ""),
        f"  per step   {report['tokens_per_step']:,} tokens; "
        f"{_figure(report['steps_per_epoch'])} steps per epoch",
        f"  validation {val['source']}: {_figure(val['tokens'])} tokens, {val['batches']} batches",
    ]
    sources = report.get("sources") or []
    if len(sources) > 1:
        for s in sources:
            epochs = s["epochs_planned"]
            lines.append(
                f"  source     {s['name']} {s['weight']:.1%}: {s['documents']:,} documents, "
                f"{_figure(s['tokens'])} tokens"
                + (f", {epochs:g} epochs planned" if epochs is not None else "")
            )
    for name, s in report["eval_sets"].items():
        lines.append(f"  eval set   {name}: {_figure(s['tokens'])} tokens, {s['batches']} batches")
    hits = [f"{k} {'hit' if v['hit'] else 'built'}" for k, v in report["cache"].items()]
    lines.append(f"  token cache {', '.join(hits)}")
    return "\n".join(lines)
