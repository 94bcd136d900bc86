//! The library's tests, one binary: one layer (`linear`), whole models (`model`), adapter
//! files (`files`) and parity with PEFT's golden files (`parity`).

mod common;
mod dora;
mod edges;
mod files;
mod layers;
mod linear;
mod model;
mod multi;
mod parity;
mod props;
