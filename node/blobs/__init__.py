"""Blobs on the mesh's farmers: where chunks go (`placement`), putting a blob (`upload`), reading one
back (`download`), and what a farmer does with the chunks it is given (`holder`)."""
