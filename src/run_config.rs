//! Run configuration (issue 5).
