//! Python tool sandbox (issue 5).
