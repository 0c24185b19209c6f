//! Helpers shared by every end-to-end module.

#![allow(dead_code)]

pub mod data;
pub mod s3;
