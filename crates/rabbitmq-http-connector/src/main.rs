//! `rabbitmq-http-connector`: everything is in the library; see docs/configuration.md.

fn main() -> std::process::ExitCode {
    connector_core::app::main::<rabbitmq_http_connector::RabbitConnector>()
}
