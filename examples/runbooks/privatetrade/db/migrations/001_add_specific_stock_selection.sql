-- PrivateTrade v2.0.0: specific stock selection. Additive only, so v1.9.0 keeps working on the migrated schema.
ALTER TABLE config ADD COLUMN stock_mode TEXT;
ALTER TABLE config ADD COLUMN selected_specific_stocks TEXT;
