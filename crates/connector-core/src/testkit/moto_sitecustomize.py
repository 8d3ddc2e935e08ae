# Loaded by the Python of the moto server that testkit::Moto starts (as `sitecustomize`, through
# PYTHONPATH). moto's Kinesis model numbers a new record "highest sequence number + 1" and stores
# it under that number without a lock, so two PutRecord calls served by two threads at once can
# get the same number, the second overwriting the first while both callers are told it was
# stored (measured: about 3 records in 1 000 lost with 32 concurrent writers). A real stream
# never does that; the tests would count it as a message the connector lost. Kinesis calls are
# therefore served one at a time; everything else (SQS long polls) stays concurrent.
import threading

import werkzeug.serving as _serving

_run_simple = _serving.run_simple
_kinesis = threading.Lock()


def _one_kinesis_call_at_a_time(app):
    def serve(environ, start_response):
        if environ.get("HTTP_X_AMZ_TARGET", "").startswith("Kinesis_"):
            with _kinesis:
                return list(app(environ, start_response))
        return app(environ, start_response)

    return serve


def _run_simple_serialising_kinesis(hostname, port, application, *args, **kwargs):
    return _run_simple(hostname, port, _one_kinesis_call_at_a_time(application), *args, **kwargs)


_serving.run_simple = _run_simple_serialising_kinesis
