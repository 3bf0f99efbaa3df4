//! Offline consistency check of partition directories (`strata log verify`).
