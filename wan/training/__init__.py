"""Training: `TrainConfig` (config), the loss maths (loss), the trainer (trainer), LoRA (lora), the command line
shared by the two 1.3B scripts (cli) and a one-step GPU benchmark (bench_step). Submodules are imported where
used, so `import wan.training` stays light."""
