-- PrivateTrade v1.9.0: the backtest configuration table and its four rows.
CREATE TABLE IF NOT EXISTS config (
  id INTEGER PRIMARY KEY,
  name TEXT NOT NULL,
  value TEXT,
  created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
  updated_at TIMESTAMP
);
INSERT INTO config (name, value) VALUES ('capital', '10000000'), ('fee', '0.00015'), ('slippage', '0.001'),
  ('period', '2y');
