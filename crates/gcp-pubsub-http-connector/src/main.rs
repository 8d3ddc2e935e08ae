//! `gcp-pubsub-http-connector`: everything is in the library; see docs/configuration.md.

fn main() -> std::process::ExitCode {
    connector_core::app::main::<gcp_pubsub_http_connector::PubSubConnector>()
}
