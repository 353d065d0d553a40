"""Limits on what a person or a client may send: config files, paths and text.

Every process reads input from outside (a YAML file, a form, an HTTP request); these are
the bounds they share, so a value the console accepts is one the trainer can read, and a
hostile one is refused with a message instead of exhausting memory or crashing a reader.
"""

from __future__ import annotations

# A config file (YAML): mlx-lm's are a few hundred bytes.
MAX_YAML_BYTES = 256 * 1024
# Nesting of a config's mappings and lists (a config nests three levels deep, but
# `optimizer_config` may hold any mapping): the same bound as a JSON request body's, so a
# config the console accepts as JSON can be written as YAML and read back.
MAX_YAML_DEPTH = 64
# Aliases (*name) in one document, and the values a document may expand to with them: a
# few aliases may stand for millions of values ("billion laughs").
MAX_YAML_ALIASES = 64
MAX_YAML_NODES = 20_000
# A path: PATH_MAX on Linux; one file or folder name: NAME_MAX (bytes).
MAX_PATH_CHARS = 4096
MAX_NAME_BYTES = 255


def has_lone_surrogate(text: str) -> bool:
    """True when `text` holds a UTF-16 surrogate code point (\\ud800-\\udfff) on its own:
    JSON can carry one, but no file name or file contents can be written with it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def path_problem(path: str) -> str | None:
    """Why `path` cannot name a file (too long, a NUL, a lone surrogate), or None."""
    if len(path) > MAX_PATH_CHARS:
        return f"the path is longer than {MAX_PATH_CHARS} characters"
    if "\x00" in path:
        return "the path contains a NUL character"
    if has_lone_surrogate(path):
        return "the path contains a lone surrogate (\\ud800-\\udfff): not valid text"
    if any(len(part.encode("utf-8")) > MAX_NAME_BYTES for part in path.split("/")):
        return f"a file or folder name in the path is longer than {MAX_NAME_BYTES} bytes"
    return None
