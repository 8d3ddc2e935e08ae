//! `nats-jetstream-http-connector`: everything is in the library; see the README.

fn main() -> std::process::ExitCode {
    connector_core::app::main::<nats_jetstream_http_connector::NatsConnector>()
}
