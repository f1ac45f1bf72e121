//! Integration tests of weft live in `tests/tests`; shared helpers in `tests/tests/common`.
