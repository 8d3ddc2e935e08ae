fn main() -> std::process::ExitCode {
    connector_core::app::main::<aws_kinesis_http_connector::KinesisConnector>()
}
