//! AdamW, learning-rate schedule and gradient clipping, CPU reference (issue 4).
