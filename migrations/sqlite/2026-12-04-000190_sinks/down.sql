DROP TABLE sink_deliveries;
DROP TABLE sinks;
