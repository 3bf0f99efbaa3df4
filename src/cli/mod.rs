//! The `strata` command line.
