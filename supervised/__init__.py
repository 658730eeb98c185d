"""cbp_rl.supervised."""
