"""Stage 5, inspect: input plausibility, stateful query detection, rate limits, budgets.

Modules: `stats` (feature statistics in the model manifest's format), `bounds`
(stateless checks), `fingerprint` (compact query fingerprints), `state`
(per-client history in process or in Redis), `detector` (near-duplicate probing
and extraction signals), `ratelimit` (token buckets), `budget` (query budgets),
`stage` (the pipeline stages), `metrics`.
"""
