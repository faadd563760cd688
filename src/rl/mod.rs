//! Per-action REINFORCE++ advantages and the clipped policy-gradient loss, CPU reference (issue 4).
