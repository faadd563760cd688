//! The coach (issue 5): prompts, strict score parsing, rule-based and HTTP backends.
