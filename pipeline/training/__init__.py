"""The train stage's internals: freeze policy and parameter counts, the trainee and its fused loss, the
frozen-prefix cache, checkpoints and resume, and the one assembly of the HF Trainer."""
