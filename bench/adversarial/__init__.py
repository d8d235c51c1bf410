"""bench/adversarial: attacks on the gateway's model, benign populations, extraction.

    python -m bench.adversarial [--quick] [--only PART,...] [--adaptive-runs 10] ...

Prints one table (and the goals it is judged against):
- standard attacks (ART HopSkipJump and ZOO with the ids fixed, FGSM transferred from
  an extracted surrogate): issue 7's harness, `standard.py`;
- adaptive families (issue 16), `adaptive.py`: NES with sigma 0.3 noise on every
  query; NES rotating ~60 id pairs with exact stored rows mixed in; HopSkipJump
  (label) rotating id pairs, also against rank_only output; 24 exact stored rows
  interleaved per attack row; one attack split over 50 credentials of one tenant;
  pacing (7 near-duplicates per id pair per client every 15 minutes) with the
  gateway's clock injected. Each: success without defence (detection `flag`), success
  with `block`, runs flagged, median queries to the first flag; each run one tenant
  capped at --tenant-queries rows, the attacker granted raw-feature access;
- benign populations over an hour of compressed time against the shipped bundle with
  `block` (`populations.py`): a service client ranking for 50 users, feature pipelines
  whose features drift, catalogue sessions; the refusal rate of each;
- extraction (`extraction.py`): surrogate agreement (Spearman, label agreement) after
  1k/5k/10k answers under each output hardening, and the watermark p-value in the
  surrogate (`gateway models watermark-check`, when the gateway has it).

Gateways: real uvicorn processes (one data directory, one signed bundle each) and, for
what needs compressed time, the same app in process with a clock the bench owns
(`gateway.app.create_app(settings, clock=...)`); all driven over HTTP only.
Success: the committed model's label (above/below the median benign score) flips at the
target's own ids with an RMS perturbation of at most --eps training standard deviations.
"""

from __future__ import annotations

from typing import Any


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from bench.adversarial.run import main as run

    return run(argv)
