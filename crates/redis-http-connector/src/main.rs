//! `redis-http-connector`: everything is in the library; see the README for configuration.

fn main() -> std::process::ExitCode {
    connector_core::app::main::<redis_http_connector::RedisConnector>()
}
