fn main() -> std::process::ExitCode {
    connector_core::app::main::<aws_sqs_http_connector::SqsConnector>()
}
