//! `nats-jetstream-http-connector`: everything is in the library; see docs/configuration.md.

fn main() -> std::process::ExitCode {
    // The way back to the original connector (see docs/configuration.md, NATS JetStream).
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == "--restore-push")
    {
        return nats_jetstream_http_connector::restore_push_main();
    }
    connector_core::app::main::<nats_jetstream_http_connector::NatsConnector>()
}
