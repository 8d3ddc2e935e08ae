-- The source queue (TOPIC) and the response/error tables (RESPONSE_TOPIC, ERROR_TOPIC).
CREATE TABLE IF NOT EXISTS orders (
    id            bigserial PRIMARY KEY,
    payload       bytea NOT NULL,
    claimed_until timestamptz
);
CREATE TABLE IF NOT EXISTS orders_responses (id bigserial PRIMARY KEY, payload bytea NOT NULL);
CREATE TABLE IF NOT EXISTS orders_errors (id bigserial PRIMARY KEY, payload bytea NOT NULL);
-- Producers: INSERT INTO orders (payload) VALUES ('...');
