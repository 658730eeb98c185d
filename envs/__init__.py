"""cbp_rl.envs."""
