-- The demo database: a Books table with seven rows. examples/run-cluster.sh makes each node's database from it,
-- and so does the container image's entrypoint with HARMONYLITE_DEMO_DB=1 when the database does not exist yet.
CREATE TABLE Books (
    id INTEGER PRIMARY KEY,
    title TEXT NOT NULL,
    author TEXT NOT NULL,
    publication_year INTEGER
);
INSERT INTO Books (title, author, publication_year) VALUES
    ('The Hitchhiker''s Guide to the Galaxy', 'Douglas Adams', 1979),
    ('The Lord of the Rings', 'J.R.R. Tolkien', 1954),
    ('Harry Potter and the Sorcerer''s Stone', 'J.K. Rowling', 1997),
    ('The Catcher in the Rye', 'J.D. Salinger', 1951),
    ('To Kill a Mockingbird', 'Harper Lee', 1960),
    ('1984', 'George Orwell', 1949),
    ('The Great Gatsby', 'F. Scott Fitzgerald', 1925);
