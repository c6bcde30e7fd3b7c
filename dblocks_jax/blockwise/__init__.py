"""The block-wise engine: plan, schedule, parts, optimizer, steps."""
