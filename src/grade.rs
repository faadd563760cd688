//! Rule-based math answer grading (issue 5): extraction, normalisation, equivalence.
