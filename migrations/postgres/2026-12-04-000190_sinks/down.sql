DROP TRIGGER IF EXISTS sink_deliveries_changed ON sink_deliveries;
DROP TABLE sink_deliveries;
DROP TABLE sinks;
