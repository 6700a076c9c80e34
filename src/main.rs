pub mod pb { tonic::include_proto!("phantom.v1"); }
fn main() {}
