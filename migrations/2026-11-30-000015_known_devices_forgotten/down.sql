ALTER TABLE known_devices DROP COLUMN forgotten_at;
