"""Stage 5, inspect: input plausibility, stateful query detection, rate limits, budgets.

Modules: `stats` (feature statistics in the model manifest's format), `bounds`
(stateless checks), `fingerprint` (distances to the store row, LSH buckets, keyed
hashes), `sketch` (time-decayed count-min sketches: every history in fixed memory),
`state` (sketch, strikes and cool-downs in process or in Redis), `shared_state` (the
same shared by the workers of one box), `detector` (versions, off-store and
near-duplicate signals per client, tenant and subject), `ratelimit` (token buckets),
`budget` (query budgets per client, subject and tenant), `perturb` (keyed score
perturbation), `stage` (the pipeline stages), `metrics`.
"""
