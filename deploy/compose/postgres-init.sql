-- Run once by the postgres image on an empty data volume (docker-entrypoint-initdb.d):
-- the schema registry keeps its schemas in a database of its own, next to the tool's.
CREATE DATABASE apicurio OWNER scheduled_jobs;
