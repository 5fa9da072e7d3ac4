DROP TABLE api_key_quotas;
DROP TABLE api_keys;
DROP TABLE sessions;
DROP TABLE users;
