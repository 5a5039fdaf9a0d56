"""Print a blob's bytes, or `MISSING`, and list the container's blob names (tests/cli/cloud.rs).

Usage: azure_blob.py CONNECTION_STRING CONTAINER BLOB
Prints the blob's content to stdout (or `MISSING`), then on stderr every blob name in the
container, one a line, so a test can check that no temporary or partial blob is left behind.
"""
import sys

from azure.core.exceptions import ResourceNotFoundError
from azure.storage.blob import BlobServiceClient

connection, container, blob = sys.argv[1:4]
client = BlobServiceClient.from_connection_string(connection).get_container_client(container)
try:
    sys.stdout.write(client.download_blob(blob).readall().decode())
except ResourceNotFoundError:
    sys.stdout.write("MISSING")
for item in client.list_blobs():
    sys.stderr.write(item.name + "\n")
