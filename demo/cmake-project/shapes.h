#ifndef CMAKE_DEMO_SHAPES_H
#define CMAKE_DEMO_SHAPES_H

#ifdef __cplusplus
extern "C" {
#endif

int square_area(int side);

#ifdef __cplusplus
}
#endif

#endif
