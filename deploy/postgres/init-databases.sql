-- One role and one database per service, run once by the postgres image on an empty volume
-- (docker-compose.yml mounts it into /docker-entrypoint-initdb.d/).
-- The passwords are local-development defaults (docs/deploy.md): anywhere else, create the
-- roles with passwords of your own and hand the services their URLs through *_FILE secrets.
-- A service's role owns its database and cannot connect to any other service's.

CREATE ROLE inventory LOGIN PASSWORD 'inventory-local-dev';
CREATE DATABASE inventory OWNER inventory;
REVOKE ALL ON DATABASE inventory FROM PUBLIC;

CREATE ROLE payment LOGIN PASSWORD 'payment-local-dev';
CREATE DATABASE payment OWNER payment;
REVOKE ALL ON DATABASE payment FROM PUBLIC;

CREATE ROLE shipping LOGIN PASSWORD 'shipping-local-dev';
CREATE DATABASE shipping OWNER shipping;
REVOKE ALL ON DATABASE shipping FROM PUBLIC;

CREATE ROLE notification LOGIN PASSWORD 'notification-local-dev';
CREATE DATABASE notification OWNER notification;
REVOKE ALL ON DATABASE notification FROM PUBLIC;

CREATE ROLE tracker LOGIN PASSWORD 'tracker-local-dev';
CREATE DATABASE tracker OWNER tracker;
REVOKE ALL ON DATABASE tracker FROM PUBLIC;
