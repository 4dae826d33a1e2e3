"""`xdray label`: read and clean the transfer corpus, and label it once with the teacher into Parquet."""
