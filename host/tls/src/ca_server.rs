//! The CA's signing endpoint (`weft ca serve`).
