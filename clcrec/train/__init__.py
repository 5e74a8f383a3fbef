"""Training: the execution plan, the step (eager, CUDA graph, compiled), the trainer loop,
epoch selection, negative generations, distributed helpers, the high-level flow and plots."""
