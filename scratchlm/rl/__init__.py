"""Reinforcement learning on a language model: GRPO's loss (``grpo.py``), rollouts sampled
through the engine and the loss module that trains on them (``rollout.py``), and the rewards
(``rewards.py``: checked answers, format, length, a reward model). Above ``generation`` and
``evaluate``, whose engine and answer checks it uses; below the recipes."""
