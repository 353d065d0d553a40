"""The adversarial suite (issue 10): damaged run folders, hostile requests, full disks and
kills at bad moments. Each case must get a clear answer, hang nothing and serve no byte
from outside the workspace."""
