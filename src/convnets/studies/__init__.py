"""The case studies run on your data: `experiments` (plain vs residual depth: Fig. 6 and Table 6, gradient
norms, identity learning), `compare` (a leaderboard), `pick` (the model for a budget)."""
