//! Placing received data: the receiver's temporary files (named for resume, or unnamed) and their
//! links, and the hashing thread that checks a file's SHA-256 while it is written.

pub(crate) mod filehash;
pub(crate) mod partfile;
