//! Dify simulator (work in progress).
