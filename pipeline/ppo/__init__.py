"""PPO: the algorithm (`algorithm`), rollouts (`rollout`) and what the stage leaves behind (`summary`)."""
