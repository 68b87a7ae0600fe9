//! dify-shaper's tools that are not the proxy: the Dify simulator (`dify-shaper sim`, the
//! backend of the tests, benches and demo), the open-loop load generator, and the demo
//! (`dify-shaper demo`). They use the proxy library; it does not use them.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod demo;
pub mod loadgen;
pub mod sim;
