CREATE TABLE accounts (owner text PRIMARY KEY, balance int NOT NULL);
INSERT INTO accounts VALUES ('alice', 100), ('bob', 50);
