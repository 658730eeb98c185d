"""cbp_rl.agents."""
