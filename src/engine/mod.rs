//! STUB (to be written): the batched generation engine above the model interface.
